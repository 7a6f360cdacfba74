"""agentic: run a fleet of AI agents as one system."""
