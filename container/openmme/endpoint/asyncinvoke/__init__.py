"""Asynchronous invocations: SageMaker's ``InvokeEndpointAsync`` for any TargetModel of the endpoint.

request.py   the call parsed and checked, the model it names, where its outcome goes (pure)
journal.py   the accepted requests, durable on the endpoint's disk until their outcome is in S3
runner.py    accept, queue, run through the data plane, write the result or failure to S3
"""

from openmme.endpoint.asyncinvoke.request import FAILURE_LOCATION, OUTPUT_LOCATION, AsyncRequest, Destinations
from openmme.endpoint.asyncinvoke.runner import Accepted, AsyncInvocations

__all__ = ["FAILURE_LOCATION", "OUTPUT_LOCATION", "Accepted", "AsyncInvocations", "AsyncRequest", "Destinations"]
