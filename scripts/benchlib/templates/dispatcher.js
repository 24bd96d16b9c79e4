// Generated into .bench/ by scripts/bench: the workerd side of the benchmark.
//
// A dispatcher that routes on the Host header's first label
// (t17.localhost -> user worker "t17") and runs the user worker through the
// Dynamic Worker Loader binding (env.LOADER). tenants.json holds each
// "deployed" user worker's source; the loader compiles a worker the first
// time its id is asked for and caches it afterwards.
import tenants from "tenants.json";

export default {
  async fetch(request, env) {
    const host = request.headers.get("host") || "";
    const name = host.split(".")[0].split(":")[0];
    const source = tenants[name];
    if (source === undefined) {
      return new Response("no such worker", { status: 404 });
    }
    const worker = env.LOADER.get(name, () => ({
      compatibilityDate: "@COMPAT_DATE@",
      mainModule: "worker.js",
      modules: { "worker.js": source },
    }));
    return worker.getEntrypoint().fetch(request);
  },
};
