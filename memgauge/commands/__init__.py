"""CLI commands that live in their own module: each defines `register(subparsers)` and sets
`fn` on its parser to a function taking the parsed arguments and returning an exit code."""
