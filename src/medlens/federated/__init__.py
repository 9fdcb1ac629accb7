"""Federated training across sites on Flower's deployment runtime (docs/guide/federated.md).

Coordinator and sites: ``flower_app`` (the ServerApp's rounds, the ClientApp), ``server`` (SuperLink, the run,
round checkpoints), ``site`` (a site's SuperNode), ``launch`` (``medlens federate`` on one machine), ``updates``
(checking and averaging weights), ``tls`` (local certificates). Site-side learning: ``summaries``, ``plan``,
``local``, ``privacy``; results: ``result``, ``compare``; ``sites`` splits one dataset into sites.
Flower is imported only by ``flower_app``, which its processes load.
"""
