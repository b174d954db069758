"""The compute-session server: the Backend.AI run-loop API over local Jupyter kernels."""
