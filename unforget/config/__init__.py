"""The run spec (model, data, recipe) and option parsing/validation shared by spec and methods."""
