"""The one exception type every user-caused streams problem raises: a single clear line."""


class SourceError(RuntimeError):
    """A source cannot be opened or read: a missing file, a bad URI, an undecodable file,
    a missing GStreamer plugin. The message names the cause and the fix, never a credential."""
