"""One router per concern; ``main.create_app`` includes them all."""
