"""The flags of each `chunklm` command, one module per command or family (parser side: no jax, so `--help` and flag
errors answer at once). Each module's `add(sub)` adds its subparser(s) and names the body that runs each with
`set_defaults(body=...)`: a key of `chunklm.cli.commands.COMMANDS`."""
