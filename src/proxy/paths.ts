/**
 * Where sockets live: `$XDG_RUNTIME_DIR/NAME` or an absolute path, the runtime directory's
 * safety rules, and the host display's path. Pure path logic plus `fs` checks; no sockets.
 */
import { Data } from "effect"
import { realpathSync, statSync } from "node:fs"
import { dirname, isAbsolute, join, resolve } from "node:path"

export class ServeError extends Data.TaggedError("ServeError")<{
  readonly reason: "InUse" | "Socket" | "RuntimeDir" | "HostDisplay" | "Mode"
  readonly message: string
}> {}

/** `XDG_RUNTIME_DIR`, checked the way libwayland expects it: it exists, is ours, and is 0700. */
export const runtimeDir = (env: NodeJS.ProcessEnv = process.env): string | ServeError => {
  const dir = env.XDG_RUNTIME_DIR
  if (dir === undefined || dir === "") {
    return new ServeError({
      reason: "RuntimeDir",
      message: "XDG_RUNTIME_DIR is not set; set it to a private directory, e.g. export XDG_RUNTIME_DIR=/run/user/$(id -u)"
    })
  }
  let st
  try {
    st = statSync(dir)
  } catch {
    return new ServeError({ reason: "RuntimeDir", message: `XDG_RUNTIME_DIR ${dir} does not exist; create it with: mkdir -m 0700 -p ${dir}` })
  }
  if (!st.isDirectory()) return new ServeError({ reason: "RuntimeDir", message: `XDG_RUNTIME_DIR ${dir} is not a directory` })
  const uid = process.getuid?.() ?? st.uid
  if (st.uid !== uid) {
    return new ServeError({ reason: "RuntimeDir", message: `XDG_RUNTIME_DIR ${dir} belongs to uid ${st.uid}, not to you (uid ${uid}); use a directory of your own` })
  }
  if ((st.mode & 0o077) !== 0) {
    return new ServeError({
      reason: "RuntimeDir",
      message: `XDG_RUNTIME_DIR ${dir} has mode 0${(st.mode & 0o777).toString(8)}; other users could reach its sockets. Fix: chmod 0700 ${dir}`
    })
  }
  return dir
}

/** A socket name (`wayland-0`) or absolute path → absolute path. */
export const socketPath = (nameOrPath: string, env: NodeJS.ProcessEnv = process.env): string | ServeError => {
  if (isAbsolute(nameOrPath)) return nameOrPath
  if (nameOrPath.includes("/")) return resolve(nameOrPath)
  const dir = runtimeDir(env)
  if (dir instanceof ServeError) return dir
  return join(dir, nameOrPath)
}

/** `--host-display`: NAME or PATH; default `$WAYLAND_DISPLAY`, else `wayland-0` (libwayland's rule). */
export const hostDisplayPath = (flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string | ServeError => {
  const name = flag !== undefined && flag !== "" ? flag : env.WAYLAND_DISPLAY !== undefined && env.WAYLAND_DISPLAY !== "" ? env.WAYLAND_DISPLAY : "wayland-0"
  if (isAbsolute(name)) return name
  const dir = env.XDG_RUNTIME_DIR
  if (dir === undefined || dir === "") {
    return new ServeError({ reason: "HostDisplay", message: `cannot locate host display ${name}: XDG_RUNTIME_DIR is not set (or pass an absolute path)` })
  }
  return join(dir, name)
}

/** True when two socket paths name the same file (or would, once the first is created). */
export const samePath = (a: string, b: string): boolean => {
  const canon = (p: string): string => {
    try {
      return realpathSync(p)
    } catch {
      try {
        return join(realpathSync(dirname(p)), p.slice(dirname(p).length + 1))
      } catch {
        return resolve(p)
      }
    }
  }
  return canon(a) === canon(b)
}
