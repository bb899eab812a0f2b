"""What meda remembers: the state store, migrations, operations and events."""
