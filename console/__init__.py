"""The people's side of Sealroom: the Flask console, its JSON API and the `sealroom` CLI.

`console.app.create_app` is the app factory.
"""
