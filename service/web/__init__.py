"""The demo page served at ``GET /`` (``service/api/web.py``): static HTML, CSS and JS."""
