"""MuJoCo simulation: scenes of lab arms, language-conditioned tasks, SimRobot, scripted expert.

MuJoCo chooses its OpenGL backend when it is first imported, so the headless default is set
here, before any module of this package imports it: EGL when there is no display.
"""

import os

if not os.environ.get("DISPLAY") and not os.environ.get("MUJOCO_GL"):
    os.environ["MUJOCO_GL"] = "egl"
