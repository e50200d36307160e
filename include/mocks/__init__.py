"""Stand-ins for the outside world: the mock ESP (HTTP), the mock SMTP relay, and the IMAP server that
serves the relay's bounce mailbox."""
