"""Flask-WTF forms: parsing and field validation for console pages (CSRF included)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (
    BooleanField,
    DecimalField,
    IntegerField,
    PasswordField,
    RadioField,
    SelectField,
    SelectMultipleField,
    StringField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional


class LoginForm(FlaskForm):  # type: ignore[misc]
    username = StringField("User name", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


def split_ids(text: str) -> list[str]:
    """Ids typed into a free text field, separated by commas and/or white space."""
    return [part for part in text.replace(",", " ").split() if part]


class LaunchForm(FlaskForm):  # type: ignore[misc]
    #: The engineer's own words for the run, checked by `console.services.labels` (so a bad
    #: one is refused and audited like any refused launch, the form keeping what was typed).
    name = StringField("Name", validators=[Optional()])
    tags = StringField("Tags", validators=[Optional()])
    #: `name` (its newest usable version) or `name@version`.
    dataset = SelectField("Dataset version", validators=[DataRequired()])
    #: The caller's own finished sandboxes whose outputs to mount under /inputs.
    inputs = SelectMultipleField("Outputs of my finished sandboxes", default=[])
    #: Other sandboxes' ids (outputs shared with the caller's group), comma or space separated.
    other_inputs = StringField("Other sandboxes' outputs (ids)",
                               validators=[Optional(), Length(max=2000)])
    project = SelectField("Project", default="")
    source = RadioField("Code", choices=[SelectChoice("example", "Bundled example (MLP)"),
                                         SelectChoice("upload", "Upload a script (.py) or a zip")],
                        default="example")
    example = SelectField("Example to run", default="mlp")
    code = FileField("Script or zip")
    kind = RadioField("Run as", choices=[SelectChoice("single", "One container"),
                                         SelectChoice("mpi", "An MPI cluster of N ranks")],
                      default="single")
    ranks = IntegerField("Ranks (N)", default=1, validators=[NumberRange(min=1)])
    command = StringField("Command", default="python train.py",
                          validators=[DataRequired(), Length(max=1000)])
    #: How the command runs: a program with its arguments (no shell), or by `sh -c`.
    command_kind = RadioField("How to run the command", choices=[
        SelectChoice("program", "A program and its arguments (no shell)"),
        SelectChoice("shell", "A shell command (sh -c: cd, &&, pipes, $VARIABLES)")],
        default="program")
    cpus = DecimalField("CPUs", default=1, places=2, validators=[NumberRange(min=0.1)])
    memory_mb = IntegerField("Memory (MB)", default=2048, validators=[NumberRange(min=64)])
    pids = IntegerField("Max processes", default=256, validators=[Optional(), NumberRange(min=16)])
    timeout_s = IntegerField("Time limit (s)", default=1800, validators=[NumberRange(min=1)])


class ProjectForm(FlaskForm):  # type: ignore[misc]
    name = StringField("Name", validators=[DataRequired(), Length(max=63)])
    quota_mb = IntegerField("Quota (MB)", default=1024, validators=[NumberRange(min=1)])


class DatasetUploadForm(FlaskForm):  # type: ignore[misc]
    """A dataset, or a new version of one: a .zip of its files, or one file."""

    name = StringField("Dataset name", validators=[DataRequired(), Length(max=63)])
    data = FileField("Files (a .zip, or one file)")
    allow = StringField("Allow (users, role:<role>, group:<group>; optional)",
                        validators=[Optional(), Length(max=2000)])


class RetireForm(FlaskForm):  # type: ignore[misc]
    confirm = BooleanField("Yes, retire it: no new sandbox may mount this version",
                           validators=[DataRequired()])
