"""The admin plane: the REST API (router, handlers, rendering), uploads (multipart) and project folders."""
