"""The one exception type for problems a user can fix."""


class UserError(Exception):
    """Bad input (a key, a file, a source, a model id): printed as one line, exit code 2.

    Raised before expensive work starts wherever the problem can be seen up front.
    """
