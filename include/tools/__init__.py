"""Project tools: the lock files (`make lock`) and the contact-file generator (`make input`)."""
