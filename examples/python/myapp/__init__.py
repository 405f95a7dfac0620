"""An application's own package, with its jobq handlers in ``myapp.jobs``."""
