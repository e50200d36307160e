"""The package's web app, mounted on Airflow's api-server under ``settings.URL_PREFIX`` by the plugin
(``welcome_mailer.plugin``). ``app`` only wires the routers; one module per resource, each with its own
router, and every route checks its own callers (Airflow does not authenticate plugin apps)."""
