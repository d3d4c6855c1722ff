"""limbic: real-world reinforcement learning for robot arms.

A vision-language-action policy acts, a vision-language progress critic judges every step,
human demonstrations and interventions steer learning, and the same code runs in MuJoCo and
on physical lab arms.
"""

__version__ = "0.1.0"
