"""The welcome email itself."""

SUBJECT = "Welcome!"


def welcome_text(name: str) -> str:
    """ "Hi {name}, Welcome!"; a contact without a name is greeted "Hi there, Welcome!"."""
    return f"Hi {name or 'there'}, Welcome!"
