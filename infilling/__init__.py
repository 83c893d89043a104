"""Fill-in-the-middle: training transforms, infilling inference and the editor HTTP API."""
