"""The console's routes, one module per concern; each route is a plain function on its module's router
that reaches the app's state through :data:`pillars.console.routes.context.ConsoleDep`.

- :mod:`~pillars.console.routes.context`: the state, the page renderer, the checked form, the error handler;
- :mod:`~pillars.console.routes.access`: the request guard, sign-in, the health check;
- :mod:`~pillars.console.routes.pipelines`: pipelines and their run forms;
- :mod:`~pillars.console.routes.runs`: the console's runs and their progress;
- :mod:`~pillars.console.routes.models`: the registry's models, versions and artifacts (read-only);
- :mod:`~pillars.console.routes.actions`: promote and roll back (the registry's compare-and-set);
- :mod:`~pillars.console.routes.endpoints`: the model endpoints' health and metrics.
"""

from pillars.console.routes import access, actions, endpoints, models, pipelines, runs

ROUTERS = (access.router, pipelines.router, runs.router, models.router, actions.router, endpoints.router)
"""Every router, in the order the app includes them."""

__all__ = ["ROUTERS"]
