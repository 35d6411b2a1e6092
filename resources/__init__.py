"""Icons and other assets shipped with the app."""
