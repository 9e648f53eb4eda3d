"""Small heads shared by tasks."""
