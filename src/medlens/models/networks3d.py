"""3D classifiers that get 3D quality cheaply on a CPU (issue 19): registered on import."""
