"""The Flask extensions the console uses, made once here and bound to an app by the factory
(`console.app.create_app`): blueprints that decorate views with them import this module,
never the factory.
"""

from __future__ import annotations

from flask import Flask, current_app
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

from console.services.flood import LoginThrottle, RefusalLedger, RequestLimits, record_counted

_LIMITS_KEY = "sealroom_limits"


class ConsoleLimits:
    """The login and refusal limits of `console.services.flood`, one set per app (counted
    in this process's memory); `init_app` makes them from the installation's settings and
    has the installation record what they counted when it is closed."""

    def init_app(self, app: Flask) -> None:
        sealroom = app.extensions["sealroom"]
        limits = RequestLimits.from_settings(sealroom.settings)
        app.extensions[_LIMITS_KEY] = limits
        sealroom.at_close(lambda: record_counted(sealroom, limits.refusals, everything=True))

    @staticmethod
    def of(app: Flask) -> RequestLimits:
        found: RequestLimits = app.extensions[_LIMITS_KEY]
        return found

    @property
    def login(self) -> LoginThrottle:
        return self.of(current_app).login

    @property
    def refusals(self) -> RefusalLedger:
        return self.of(current_app).refusals


csrf = CSRFProtect()
login_manager = LoginManager()
limits = ConsoleLimits()
