"""Airflow hooks: Connections -> the ledger and the email provider. Registered with Airflow through the
package's ``apache_airflow_provider`` entry point (``welcome_mailer.airflow_provider``)."""
