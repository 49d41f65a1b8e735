"""Safe by default: every endpoint declares a permission, and unsafe methods need CSRF."""

from __future__ import annotations

from flask import Flask

from console.permissions import PUBLIC, Permission, declared_permission

PUBLIC_ENDPOINTS = {"static", "auth.login", "healthz", "api.release_key", "releases.keys"}


def test_every_endpoint_declares_a_permission(app: Flask) -> None:
    missing = [rule.endpoint for rule in app.url_map.iter_rules()
               if declared_permission(app.view_functions[rule.endpoint]) is None]
    assert missing == [], f"endpoints without a declared permission: {missing}"


def test_only_known_endpoints_are_public(app: Flask) -> None:
    public = {rule.endpoint for rule in app.url_map.iter_rules()
              if declared_permission(app.view_functions[rule.endpoint]) == PUBLIC}
    assert public == PUBLIC_ENDPOINTS


def test_declared_permissions_are_known(app: Flask) -> None:
    known = {p.value for p in Permission} | {PUBLIC}
    for rule in app.url_map.iter_rules():
        assert declared_permission(app.view_functions[rule.endpoint]) in known, rule.endpoint


def test_permission_names_are_scoped() -> None:
    assert all(p.value.count(":") == 2 for p in Permission)
