"""nbgrader settings for grading/editions.py (the course folder is passed on the command line)."""

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)
c.CourseDirectory.course_id = "wbc-course"
c.CourseDirectory.db_url = ""  # default: gradebook.db in the course folder
# Training notebooks run for minutes; a cell may take up to 30 minutes when graded.
c.Execute.timeout = 1800
c.Execute.interrupt_on_timeout = True
# The notebooks' own checks print what they test; keep every output for the feedback.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
