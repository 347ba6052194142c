"""gapmeter-client: the gapmeter service from Python.

    from gapmeter_client import Client
    gm = Client("http://127.0.0.1:8080", "gm_...")
    gm.upload("renders/", name="renders")
    result = gm.score("renders", "photos", metrics=["fid", "kid"])
    result["metrics"]["fid"]["value"]
"""
from .client import Client, matrix_frame, per_image_frame
from .errors import GapmeterError, JobFailed, ProblemError

__all__ = ["Client", "GapmeterError", "JobFailed", "ProblemError", "matrix_frame", "per_image_frame"]
__version__ = "0.1.0"
