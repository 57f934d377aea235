"""The web app and REST API (FastAPI): upload page at ``/``, ``POST /api/v1/predictions``,
``GET /api/v1/model``, ``GET /healthz``, OpenAPI at ``/docs``.

Build it with :func:`deephealth.web.app.create_app`; serve it with ``deephealth serve``. Needs the
``[web]`` extra. Never imports PyTorch.
"""
