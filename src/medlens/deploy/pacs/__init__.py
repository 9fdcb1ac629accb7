"""medlens as a PACS node: a DICOM C-STORE listener, DICOMweb pull / push, and where results are sent.

- :mod:`.listener`: ``medlens serve BUNDLE --dicom AE@PORT`` receives series (pynetdicom Storage SCP), predicts
  each completed series that the bundle's :mod:`.rules` take, in the service's worker processes, and sends the
  DICOM results (:mod:`.send`) to a destination.
- :mod:`.dicomweb`: ``medlens predict BUNDLE dicomweb://HOST/PATH/studies/UID [--push]``.
"""
