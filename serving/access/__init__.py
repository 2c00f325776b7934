"""Who may reach the server and how much: tokens, Host/Origin checks, connection bounds, body limits."""
