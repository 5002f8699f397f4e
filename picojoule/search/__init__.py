"""Search: strategies, constraint program, accuracy evaluation."""
