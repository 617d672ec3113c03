"""The SMART authorization server (docs/smart.md): authorize, token, introspection, revocation,
registration and EHR launch endpoints, on authlib's protocol pieces behind a thin Starlette
adapter."""
