"""Serving a registered model version: the bundle format and its loader (``bundle``), the online engine
(``engine``) and API (``api``), batch scoring of every known user (``batch``). Import the submodule you need:
importing the package imports none of them."""
