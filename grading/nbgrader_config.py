"""nbgrader settings for grading/editions.py (the course folder is passed on the command line)."""

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)
c.CourseDirectory.course_id = "wbc-course"
# Training notebooks run for minutes; a cell may take up to 30 minutes when graded.
c.Execute.timeout = 1800
c.Execute.interrupt_on_timeout = True
# What replaces the solution in the student edition (tests/test_grading.py looks for it, which also
# proves that this file was read).
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE (then run the check cell below)\nraise NotImplementedError()"}
