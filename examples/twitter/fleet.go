package main

import (
	"errors"
	"sync/atomic"

	"github.com/locksmith-go/locksmith/examples/internal/demo"
)

// fleet is the app servers of one mode, each on its own serverEnv.
type fleet struct {
	servers []appServer
	envs    []serverEnv
}

// newFleet builds cfg.servers servers of mode m, calling the API at base.
func newFleet(cfg config, env *demo.Redis, m mode, base string) *fleet {
	f := &fleet{servers: make([]appServer, cfg.servers), envs: make([]serverEnv, cfg.servers)}
	for i := range f.servers {
		f.envs[i] = serverEnv{
			cfg: cfg,
			rdb: env.Client(),
			api: &apiClient{hc: newHTTPClient(cfg.concurrency, cfg.timeout), base: base,
				own: clientTokens{tokens: appTokens(cfg.tokens), next: new(atomic.Uint64)}},
			prefix: cfg.prefix + m.name + ":",
		}
		f.servers[i] = m.newServer(f.envs[i])
	}
	return f
}

// close closes every server, then its clients.
func (f *fleet) close() error {
	var err error
	for i, s := range f.servers {
		err = errors.Join(err, s.close())
		f.envs[i].api.close()
		err = errors.Join(err, f.envs[i].rdb.Close())
	}
	return err
}
