"""Flask-WTF forms: parsing and field validation for console pages (CSRF included)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import DecimalField, IntegerField, PasswordField, RadioField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional


class LoginForm(FlaskForm):  # type: ignore[misc]
    username = StringField("User name", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


class LaunchForm(FlaskForm):  # type: ignore[misc]
    dataset = SelectField("Dataset", validators=[DataRequired()])
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
    cpus = DecimalField("CPUs", default=1, places=2, validators=[NumberRange(min=0.1)])
    memory_mb = IntegerField("Memory (MB)", default=2048, validators=[NumberRange(min=64)])
    pids = IntegerField("Max processes", default=256, validators=[Optional(), NumberRange(min=16)])
    timeout_s = IntegerField("Time limit (s)", default=1800, validators=[NumberRange(min=1)])
