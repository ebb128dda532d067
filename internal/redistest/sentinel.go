package redistest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	sentinelTimeout = 30 * time.Second // start-up, or one Failover, until settled
	sentinelCount   = 3
	sentinelQuorum  = 2

	// How often a sentinel sends INFO to the master and replicas, and
	// publishes its hello message, set with SENTINEL DEBUG; the defaults are
	// 10s and 2s. A sentinel turns an instance it knows as a replica, but
	// which reports itself a master, into a replica after 4 publish periods:
	// that is how a deposed master that is still up is demoted, so this
	// bounds how long Failover takes. It also bounds how fast a forced
	// failover must finish before a sentinel that has not yet heard of it
	// demotes the replica being promoted: the promoting sentinel sees the
	// promotion within a second (its fixed INFO period during a failover),
	// so 4s leaves a margin of seconds where 2s would leave one of less than
	// a second.
	sentinelInfoPeriod    = time.Second
	sentinelPublishPeriod = time.Second
)

// SentinelOptions configures StartSentinel. The zero value and nil are both
// valid.
type SentinelOptions struct {
	// MasterName is the name the sentinels monitor the master under.
	// default: "mymaster"
	MasterName string

	// DownAfter is the sentinels' down-after-milliseconds: how long the
	// master may go unanswered before a sentinel deems it down and, with the
	// quorum agreeing, starts a failover on its own. Failover does not wait
	// for it.
	// default: 2s
	DownAfter time.Duration

	// FailoverTimeout is the sentinels' failover-timeout: how long a
	// failover may take before it is abandoned, and twice the time before
	// the same sentinel tries to fail the master over again on its own.
	// default: 10s
	FailoverTimeout time.Duration

	// Args are extra redis-server arguments for the master and the replica,
	// as in ServerOptions.
	Args []string
}

// Sentinel is a master, one replica and three Redis Sentinels (quorum 2)
// monitoring them, each a real process on a free 127.0.0.1 port in its own
// t.TempDir(). The master and the replica swap roles on a failover.
type Sentinel struct {
	t         testing.TB // the test that started it, failed by Master
	name      string
	servers   []*Server // the first master, then the first replica
	sentinels []*Server
}

// StartSentinel starts a master, a replica of it, and three sentinels that
// monitor the master with quorum 2, and waits until the setup is usable: the
// replica is in sync with the master, and every sentinel knows the replica
// and the two other sentinels. It calls Require first, so the test is skipped
// when redis-server is missing. opt may be nil. Everything is killed in
// t.Cleanup, the sentinels first.
//
// The master and the replica run as Start runs a server, with
// --repl-diskless-sync-delay 0 so that a replica syncs without delay, and
// opt.Args. A restarted one comes back as an empty master, which the
// sentinels may or may not turn back into a replica. The sentinels run with
// SENTINEL DEBUG INFO-PERIOD 1000 PUBLISH-PERIOD 1000, shorter than the
// defaults, so that a Failover takes about 6 seconds instead of 12.
func StartSentinel(t testing.TB, opt *SentinelOptions) *Sentinel {
	t.Helper()
	Require(t)
	var o SentinelOptions
	if opt != nil {
		o = *opt
	}
	if o.MasterName == "" {
		o.MasterName = "mymaster"
	}
	if o.DownAfter <= 0 {
		o.DownAfter = 2 * time.Second
	}
	if o.FailoverTimeout <= 0 {
		o.FailoverTimeout = 10 * time.Second
	}

	s := &Sentinel{t: t, name: o.MasterName}
	extra := append([]string{"--repl-diskless-sync-delay", "0"}, o.Args...)
	master := startServer(t, serverConfig{extra: extra})
	replica := startServer(t, serverConfig{extra: extra})
	s.servers = []*Server{master, replica}
	replica.Do(t, "REPLICAOF", "127.0.0.1", master.Port())
	s.settle(t, "replica in sync", func() error { return checkReplica(replica, master) })

	// The sentinels start only now, so that the first INFO each sends the
	// master already lists the replica.
	conf := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d %[3]d\n"+
		"sentinel down-after-milliseconds %[1]s %[4]d\n"+
		"sentinel failover-timeout %[1]s %[5]d\n"+
		"sentinel parallel-syncs %[1]s 1\n",
		o.MasterName, master.Port(), sentinelQuorum, o.DownAfter.Milliseconds(), o.FailoverTimeout.Milliseconds())
	for range sentinelCount {
		sn := startServer(t, serverConfig{sentinel: conf})
		sn.Do(t, "SENTINEL", "DEBUG", "INFO-PERIOD", sentinelInfoPeriod.Milliseconds(),
			"PUBLISH-PERIOD", sentinelPublishPeriod.Milliseconds())
		s.sentinels = append(s.sentinels, sn)
	}
	s.settle(t, "sentinels ready", func() error { return s.checkSentinels(master.Addr(), replica.Addr()) })
	return s
}

// MasterName returns the name the sentinels monitor the master under, for
// redis.FailoverOptions.MasterName.
func (s *Sentinel) MasterName() string { return s.name }

// SentinelAddrs returns the sentinels' addresses, "127.0.0.1:PORT", for
// redis.FailoverOptions.SentinelAddrs.
func (s *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.sentinels))
	for i, sn := range s.sentinels {
		addrs[i] = sn.Addr()
	}
	return addrs
}

// Servers returns the master and the replica, in the order they started:
// the first master first.
func (s *Sentinel) Servers() []*Server {
	return append([]*Server(nil), s.servers...)
}

// Master returns the Server that the sentinels currently name as the
// master, asking them in turn with SENTINEL GET-MASTER-ADDR-BY-NAME until
// one answers. If none answers, or the answer is neither server, it fails the
// test that called StartSentinel, so call it from that test's goroutine.
func (s *Sentinel) Master() *Server {
	s.t.Helper()
	return s.master(s.t)
}

// master is Master, failing t.
func (s *Sentinel) master(t testing.TB) *Server {
	t.Helper()
	var errs []error
	for _, sn := range s.sentinels {
		addr, err := s.masterAddr(sn.Addr())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m := s.server(addr)
		if m == nil {
			t.Fatalf("redistest: sentinel %s names %s as master %q, which is none of %v",
				sn.Addr(), addr, s.name, s.serverAddrs())
		}
		return m
	}
	t.Fatalf("redistest: no sentinel names the master: %v", errors.Join(errs...))
	return nil
}

// Failover makes a sentinel fail the master over with SENTINEL FAILOVER and
// waits, for up to 30 seconds, until every sentinel names the new master,
// the new master reports role:master, and the old master reports role:slave,
// replicating from the new one with master_link_status:up. It also waits
// until every sentinel has seen the old master so, so that another Failover
// may follow at once. It returns the old and the new master's addresses.
//
// The old master keeps accepting writes until the sentinels turn it into a
// replica, about 5 seconds after the switch, and those writes are lost. A
// redis.FailoverClient follows the switch as soon as a sentinel announces it
// (+switch-master).
func (s *Sentinel) Failover(t testing.TB) (oldAddr, newAddr string) {
	t.Helper()
	oldMaster := s.master(t)
	var newMaster *Server
	for _, srv := range s.servers {
		if srv != oldMaster {
			newMaster = srv
		}
	}
	sn := s.sentinels[0].Addr()
	s.settle(t, "SENTINEL FAILOVER accepted", func() error {
		_, err := do(sn, "SENTINEL", "FAILOVER", s.name)
		// A sentinel refuses while it has not yet seen the replica healthy
		// (NOGOODSLAVE) or a failover is still in progress (INPROG).
		if err != nil && !strings.Contains(err.Error(), "NOGOODSLAVE") && !strings.Contains(err.Error(), "INPROG") {
			t.Fatalf("redistest: %v", err)
		}
		return err
	})
	s.settle(t, "failover to "+newMaster.Addr(), func() error {
		if err := checkRole(newMaster, "master"); err != nil {
			return err
		}
		if err := s.checkSentinels(newMaster.Addr(), oldMaster.Addr()); err != nil {
			return err
		}
		return checkReplica(oldMaster, newMaster)
	})
	return oldMaster.Addr(), newMaster.Addr()
}

// FailoverClient returns a new go-redis client that finds the master through
// the sentinels, closed in t.Cleanup. opts may be nil; it is copied and its
// MasterName and SentinelAddrs set.
func (s *Sentinel) FailoverClient(t testing.TB, opts *redis.FailoverOptions) *redis.Client {
	t.Helper()
	var o redis.FailoverOptions
	if opts != nil {
		o = *opts
	}
	o.MasterName = s.name
	o.SentinelAddrs = s.SentinelAddrs()
	c := redis.NewFailoverClient(&o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// settle polls check until it returns nil, and fails the test with check's
// last error and the processes' output if it does not within 30 seconds or
// a process exits.
func (s *Sentinel) settle(t testing.TB, what string, check func() error) {
	t.Helper()
	all := append(s.Servers(), s.sentinels...)
	deadline := time.Now().Add(sentinelTimeout)
	for {
		err := check()
		if err == nil {
			return
		}
		for _, p := range all {
			p.mu.Lock()
			exited, tail := p.proc.exited(), p.tail()
			p.mu.Unlock()
			if exited {
				t.Fatalf("redistest: %s: redis-server on %s exited%s", what, p.Addr(), tail)
			}
		}
		if time.Now().After(deadline) {
			var logs strings.Builder
			for _, p := range all {
				p.mu.Lock()
				fmt.Fprintf(&logs, "\n%s:%s", p.Addr(), p.tail())
				p.mu.Unlock()
			}
			t.Fatalf("redistest: %s: not done within %v: %v%s", what, sentinelTimeout, err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkSentinels returns nil if every sentinel names master as the master,
// with no flag but "master", knows the other sentinels, and knows replica as
// the only replica, which its latest INFO showed in sync with master.
//
// A sentinel that has not yet seen a deposed master turn into a replica
// would, on the next failover, take the newly promoted master for a replica
// that went astray and turn it back, so Failover waits for this too.
func (s *Sentinel) checkSentinels(master, replica string) error {
	for _, sn := range s.sentinels {
		err := withSentinelClient(sn.Addr(), func(ctx context.Context, c *redis.SentinelClient) error {
			m, err := c.Master(ctx, s.name).Result()
			if err != nil {
				return err
			}
			if addr := m["ip"] + ":" + m["port"]; addr != master {
				return fmt.Errorf("the master is %s; want %s", addr, master)
			}
			if m["flags"] != "master" || m["num-slaves"] != "1" || m["num-other-sentinels"] != strconv.Itoa(sentinelCount-1) {
				return fmt.Errorf("master flags %s, %s replicas, %s other sentinels; want master, 1, %d",
					m["flags"], m["num-slaves"], m["num-other-sentinels"], sentinelCount-1)
			}
			rs, err := c.Replicas(ctx, s.name).Result()
			if err != nil {
				return err
			}
			if len(rs) != 1 {
				return fmt.Errorf("%d replicas; want 1", len(rs))
			}
			r := rs[0]
			if r["ip"]+":"+r["port"] != replica || r["flags"] != "slave" || r["role-reported"] != "slave" ||
				r["master-host"]+":"+r["master-port"] != master || r["master-link-status"] != "ok" {
				return fmt.Errorf("replica %s:%s, flags %s, reported role %s of %s:%s, link %s; want %s, slave, slave of %s, ok",
					r["ip"], r["port"], r["flags"], r["role-reported"], r["master-host"], r["master-port"],
					r["master-link-status"], replica, master)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", sn.Addr(), err)
		}
	}
	return nil
}

// masterAddr asks the sentinel at addr for the master's address.
func (s *Sentinel) masterAddr(addr string) (string, error) {
	var master string
	err := withSentinelClient(addr, func(ctx context.Context, c *redis.SentinelClient) error {
		hp, err := c.GetMasterAddrByName(ctx, s.name).Result()
		if err != nil {
			return err
		}
		if len(hp) != 2 {
			return fmt.Errorf("master address %q", hp)
		}
		master = hp[0] + ":" + hp[1]
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("SENTINEL GET-MASTER-ADDR-BY-NAME %s on %s: %w", s.name, addr, err)
	}
	return master, nil
}

// server returns the master or replica at addr, or nil.
func (s *Sentinel) server(addr string) *Server {
	for _, srv := range s.servers {
		if srv.Addr() == addr {
			return srv
		}
	}
	return nil
}

func (s *Sentinel) serverAddrs() []string {
	addrs := make([]string, len(s.servers))
	for i, srv := range s.servers {
		addrs[i] = srv.Addr()
	}
	return addrs
}

// withSentinelClient calls f with a short-lived client for the sentinel at
// addr and a context that bounds the call.
func withSentinelClient(addr string, f func(context.Context, *redis.SentinelClient) error) error {
	c := redis.NewSentinelClient(&redis.Options{Addr: addr, MaxRetries: -1, DisableIdentity: true})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return f(ctx, c)
}

// checkRole returns nil if srv's INFO replication reports role:role.
func checkRole(srv *Server, role string) error {
	info, err := replicationInfo(srv)
	if err != nil {
		return err
	}
	if got := info["role"]; got != role {
		return fmt.Errorf("%s has role %s; want %s", srv.Addr(), got, role)
	}
	return nil
}

// checkReplica returns nil if replica replicates from master, its link is up
// and the initial sync is done, and master counts it as an online replica.
func checkReplica(replica, master *Server) error {
	r, err := replicationInfo(replica)
	if err != nil {
		return err
	}
	if r["role"] != "slave" || r["master_host"] != "127.0.0.1" || r["master_port"] != strconv.Itoa(master.Port()) ||
		r["master_link_status"] != "up" || r["master_sync_in_progress"] != "0" {
		return fmt.Errorf("%s: role %s of %s:%s, link %s, sync in progress %s; want slave of %s, up, 0",
			replica.Addr(), r["role"], r["master_host"], r["master_port"], r["master_link_status"],
			r["master_sync_in_progress"], master.Addr())
	}
	m, err := replicationInfo(master)
	if err != nil {
		return err
	}
	if m["role"] != "master" || m["connected_slaves"] != "1" ||
		!strings.Contains(m["slave0"], "port="+strconv.Itoa(replica.Port())+",state=online,") {
		return fmt.Errorf("%s: role %s, %s replicas, slave0 %q; want master with %s online",
			master.Addr(), m["role"], m["connected_slaves"], m["slave0"], replica.Addr())
	}
	return nil
}

// replicationInfo returns the fields of srv's INFO replication.
func replicationInfo(srv *Server) (map[string]string, error) {
	v, err := do(srv.Addr(), "INFO", "replication")
	if err != nil {
		return nil, err
	}
	info, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("INFO replication on %s answered %T", srv.Addr(), v)
	}
	fields := map[string]string{}
	for line := range strings.SplitSeq(info, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = v
		}
	}
	return fields, nil
}
