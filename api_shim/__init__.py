"""The thin HTTP edge of the fleet: validates, enqueues by task name, and reads job records.

It must stay importable without torch, store clients or task code (tests/unit/test_api_no_torch.py
guards this), so that an API replica starts in well under a second and needs a few tens of MB.
Serve with `python -m api_shim.serve --workers N` (api_shim/serve.py says why not plain uvicorn);
tests build isolated apps with `api_shim.app.create_app`.
"""
