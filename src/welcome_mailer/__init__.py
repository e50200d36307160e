"""Welcome mailer: one "Hi {name}, Welcome!" email per contact, at most once, ever.

Pure domain code (contacts, ledger, esp, greeting, pipeline, report, settings) imports nothing from Airflow;
``airflow_glue`` is the only module that does.
"""
