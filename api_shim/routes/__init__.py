"""The API's routers, one domain a module; each is built per app from `api_shim.deps.ApiDeps`.

`api_shim.app.create_app` includes them in a fixed order (route matching and the OpenAPI schema's
path order follow it).
"""
