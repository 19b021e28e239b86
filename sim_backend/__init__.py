from . import urlhandler  # noqa: F401  (registers the hilsim:// pyserial URL handler)
