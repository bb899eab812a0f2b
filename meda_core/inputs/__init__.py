"""What users send, checked: names, sizes and validation messages."""
