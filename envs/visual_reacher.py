"""visual-reacher: HFR's reaching task with image observations (Wan et al. 2022, Sec. 5, Fig. 5 and 6).

The one pixel task of the papers: the MuJoCo Reacher (gymnasium's reacher.xml, the gym Reacher model: a
two-link planar arm, 2 motors with gear 200, RK4, timestep 0.01 s, frame_skip 2, dt 0.02 s), seen from above.

Observation, float32, 2 + 3 * H * W entries (H = W = 64 unless envs.make gets `image_height` / `image_width`):
    obs[0:2]  = fingertip (x, y) in metres: what the reward reads. A pixel agent must NOT see it.
    obs[2:]   = the RGB image, channel-first (3, H, W) flattened, values k / 255 in [0, 1]
                (np.rint(obs[2:] * 255) recovers the uint8 image exactly)
`env.image_shape` is (3, H, W) and `env.state_dim` is 2: image = obs[..., state_dim:].reshape(*lead, *image_shape).
The image is rendered offscreen after every reset and step from a fixed camera straight above the arena, with
MuJoCo's OpenGL renderer (OSMesa or EGL: set MUJOCO_GL). The target sphere is hidden in the image (moved to
geom group 3, which observations do not draw): as in every PEARL / HFR family, the task is to be inferred from
rewards, not seen. `render()` (videos) shows it.

Reward (sparse, as HFR's sparse reach families): d = |fingertip' - goal|; r = 0 and terminated when
d <= 0.05 m, else r = -1; info["success"] = d <= 0.05. Horizon 50 (gym Reacher's episode length).
Task = goal (x, y), uniform in the disk of radius 0.2 m (gym Reacher's goal distribution): 130 goals from
default_rng(1337), the first 100 train and the last 30 test.
Reset: arm angles U(-0.1, 0.1), arm velocities U(-0.005, 0.005) (as gym Reacher).

Source and deviations: HFR did not release its visual-reacher code and the paper's appendix details were not
available to us, so the image size (64 x 64), the goal radius (0.05 m, HFR's sparse reach), the 100 / 30 split
(HFR's other goal families) and the horizon are our choices; each but the radius is a constructor override
(`image_width`, `image_height`, `horizon`, `n_train_tasks`, `n_test_tasks`). The fingertip is placed in the
observation so that the reward stays a function of (obs, action, next_obs, task), the rule every family here
keeps for relabeling.
Without an OpenGL backend the family still builds (`python -m envs` lists it) but reset / step refuse with a
one-line error. `pixels=False` gives the same env with a blank image (no OpenGL needed: tests of the reward, and
the render cost: `python -m envs.visual_reacher` prints steps/s with and without the pixels).
"""

from __future__ import annotations

import time

import mujoco
import numpy as np

import envs
from envs.locomotion import LocomotionEnv

GOAL_RADIUS = 0.05   # success / termination distance
HIDDEN_GROUP = 3     # geom group not drawn in observations


class VisualReacher(LocomotionEnv):
    name = "visual-reacher"
    source = "HFR (Wan et al. 2022) Visual-Reacher, on gym's Reacher model (code not released; see docstring)"
    varies = "reward"
    has_success = True
    xml = "reacher.xml"
    frame_skip = 2
    default_horizon = 50
    reset_noise = 0.1
    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 50}  # dt 0.02 s
    camera_config = {"trackbodyid": 0}
    state_dim = 2
    renders_observations = True  # observations need OpenGL, not only render()

    def __init__(self, seed: int = 0, image_width: int = 64, image_height: int = 64, pixels: bool = True,
                 **kw):
        if image_width < 8 or image_height < 8:
            raise ValueError(f"{self.name}: image_width and image_height must be >= 8, "
                             f"got {image_width} x {image_height}")
        self.image_shape = (3, int(image_height), int(image_width))
        self.pixels = pixels  # False: the same env with a blank image (measures the render cost)
        self.obs_dim = self.state_dim + int(np.prod(self.image_shape))
        super().__init__(seed=seed, **kw)
        self._fingertip = self.model.body("fingertip").id
        target = self.model.geom("target").id
        self.model.geom_group[target] = HIDDEN_GROUP
        self._video_option = mujoco.MjvOption()
        self._video_option.geomgroup[HIDDEN_GROUP] = 1
        self._renderer = self._video_renderer = None
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        self._camera.lookat[:] = (0.0, 0.0, 0.0)
        self._camera.distance = 0.75
        self._camera.azimuth = 90.0
        self._camera.elevation = -90.0
        self._blank = np.zeros(int(np.prod(self.image_shape)), np.float32)

    # ------------------------------------------------------------------ tasks
    def _task_lists(self):
        g = self.sample_tasks(130, np.random.default_rng(1337))
        return g[:100], g[100:]

    def sample_tasks(self, n, rng):
        angle = rng.uniform(0.0, 2 * np.pi, n)
        radius = 0.2 * np.sqrt(rng.uniform(0.0, 1.0, n))
        return np.stack((radius * np.cos(angle), radius * np.sin(angle)), axis=1)

    def _apply_task(self, task):
        self._goal = task

    def achieved_task(self, obs, task):
        """The goal the fingertip of `obs` achieves (for HER-style relabeling)."""
        return envs.task_with_goal(obs, task, slice(0, 2), slice(0, 2))

    # ------------------------------------------------------------------ reward
    def _reward(self, obs, a, next_obs, task):
        dx = next_obs[..., 0].astype(np.float64) - task[..., 0]
        dy = next_obs[..., 1].astype(np.float64) - task[..., 1]
        reached = dx * dx + dy * dy <= GOAL_RADIUS ** 2
        shape = np.broadcast_shapes(reached.shape, np.shape(obs)[:-1], np.shape(a)[:-1])
        reached = np.broadcast_to(reached, shape).copy()
        return reached - 1.0, reached

    def _info(self, next_obs):
        _, reached = self._reward(next_obs, np.zeros(2), next_obs, self._task)
        return {"success": bool(reached)}

    # ------------------------------------------------------------------ simulation and pixels
    def reset_model(self):
        qpos = self.init_qpos.copy()
        qpos[:2] += self.np_random.uniform(-self.reset_noise, self.reset_noise, 2)
        qpos[2:] = self._goal  # the (hidden) target sits on the goal, so videos show it
        qvel = self.init_qvel.copy()
        qvel[:2] += self.np_random.uniform(-0.005, 0.005, 2)
        qvel[2:] = 0.0
        self.set_state(qpos, qvel)
        self._obs = self._get_obs()
        return self._obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self.pixels and envs.NO_OPENGL:
            raise RuntimeError(f"{self.name}: its observations are rendered images, which need OpenGL: "
                               "apt-get install libosmesa6, or set MUJOCO_GL=egl")
        return super().reset(seed=seed, options=options)

    def _get_obs(self):
        mujoco.mj_kinematics(self.model, self.data)  # positions of the state the step reached
        tip = self.data.xpos[self._fingertip][:2]
        return np.concatenate((tip.astype(np.float32), self._image()))

    def _image(self) -> np.ndarray:
        if not self.pixels:
            return self._blank
        if self._renderer is None:
            _, h, w = self.image_shape
            self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, w)
            self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, h)
            self._renderer = mujoco.Renderer(self.model, height=h, width=w)
        self._renderer.update_scene(self.data, camera=self._camera)
        img = self._renderer.render()  # (H, W, 3) uint8
        return (img.transpose(2, 0, 1).ravel() / np.float32(255.0)).astype(np.float32)

    def image(self, obs) -> np.ndarray:
        """The uint8 image(s) (..., H, W, 3) of observation(s) `obs`, e.g. to look at or to save."""
        obs = np.asarray(obs)
        chw = np.rint(obs[..., self.state_dim:] * 255.0).astype(np.uint8)
        chw = chw.reshape(obs.shape[:-1] + self.image_shape)
        return np.moveaxis(chw, -3, -1)

    def render(self):
        """rgb_array: a `width` x `height` frame from the observation camera with the target drawn (videos)."""
        if self.render_mode != "rgb_array":
            return super().render()
        if self._video_renderer is None:
            self._video_renderer = mujoco.Renderer(self.model, height=self.height, width=self.width)
        mujoco.mj_kinematics(self.model, self.data)
        self._video_renderer.update_scene(self.data, camera=self._camera, scene_option=self._video_option)
        return self._video_renderer.render()

    def close(self):
        for r in (self._renderer, self._video_renderer):
            if r is not None:
                r.close()
        self._renderer = self._video_renderer = None
        super().close()


# ---------------------------------------------------------------------------------------------- render cost
def _speed(n_steps: int = 2_000, repeats: int = 3) -> None:
    """Random-action steps per second with and without the pixels (the same env, the image left blank),
    resets included, wall clock, best of `repeats` runs."""
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (n_steps, 2)).astype(np.float32)
    for size in (64, 84):
        rates = {}
        for pixels in (False, True):
            env = envs.make("visual-reacher", seed=0, pixels=pixels, image_width=size, image_height=size)
            rates[pixels] = envs.steps_per_second(env, actions, repeats, clock=time.perf_counter)
            env.close()
        print(f"visual-reacher {size}x{size}: {rates[False]:8,.0f} steps/s without pixels, "
              f"{rates[True]:8,.0f} with ({rates[False] / rates[True]:.0f}x)  [MUJOCO_GL={_gl()}]")


def _gl() -> str:
    import os

    return os.environ.get("MUJOCO_GL", "unset")


if __name__ == "__main__":
    _speed()
