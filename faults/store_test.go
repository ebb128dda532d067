package faults_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fencedStore is the resource a lock guards, as the lock package
// documentation asks of one: it refuses any operation whose fencing token is
// lower than the highest token it has accepted. Reads are checked as well as
// writes, so a holder that lost its lock cannot act on a value it read after
// its successor started. An operation with the highest token is accepted, so
// one holder can read and then write.
type fencedStore struct {
	mu       sync.Mutex
	max      int64 // highest token accepted
	value    int64
	log      []storeOp
	lastProc int // the process of the latest accepted read
}

// storeOp is one operation the store answered, in the order it did.
type storeOp struct {
	ID     string // the caller's name for the operation
	Proc   int
	Token  int64
	Write  bool
	Value  int64 // the value read or written
	OK     bool  // accepted
	MaxWas int64 // the highest accepted token when it arrived
}

// read returns the value if token is not stale.
func (s *fencedStore) read(token int64, proc int, id string) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	op := storeOp{ID: id, Proc: proc, Token: token, Value: s.value, OK: token >= s.max, MaxWas: s.max}
	if op.OK {
		s.max = token
		s.lastProc = proc
	}
	s.log = append(s.log, op)
	return s.value, op.OK
}

// write stores value if token is not stale.
func (s *fencedStore) write(token, value int64, proc int, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	op := storeOp{ID: id, Proc: proc, Token: token, Write: true, Value: value, OK: token >= s.max, MaxWas: s.max}
	if op.OK {
		s.max = token
		s.value = value
	}
	s.log = append(s.log, op)
	return op.OK
}

// snapshot returns the log so far and the current value.
func (s *fencedStore) snapshot() ([]storeOp, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]storeOp(nil), s.log...), s.value
}

// lastReader returns the process of the latest accepted read, -1 if none.
func (s *fencedStore) lastReader() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.log) == 0 {
		return -1
	}
	return s.lastProc
}

// serve serves the store over HTTP on a loopback port, for child processes:
// GET /read?token=&proc=&id= answers the value, POST /write?token=&value=
// &proc=&id= stores it; a stale token is answered 409 Conflict. The server
// is closed in t.Cleanup.
func (s *fencedStore) serve(t testing.TB) string {
	mux := http.NewServeMux()
	param := func(r *http.Request, name string) int64 {
		n, _ := strconv.ParseInt(r.URL.Query().Get(name), 10, 64)
		return n
	}
	mux.HandleFunc("GET /read", func(w http.ResponseWriter, r *http.Request) {
		v, ok := s.read(param(r, "token"), int(param(r, "proc")), r.URL.Query().Get("id"))
		if !ok {
			http.Error(w, "stale token", http.StatusConflict)
			return
		}
		fmt.Fprint(w, v)
	})
	mux.HandleFunc("POST /write", func(w http.ResponseWriter, r *http.Request) {
		if !s.write(param(r, "token"), param(r, "value"), int(param(r, "proc")), r.URL.Query().Get("id")) {
			http.Error(w, "stale token", http.StatusConflict)
			return
		}
		fmt.Fprint(w, "ok")
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

// storeClient is a child process's view of a served fencedStore.
type storeClient struct {
	base string
	proc int
	hc   *http.Client
}

func newStoreClient(base string, proc int) *storeClient {
	// Long enough that a process stopped mid-request for a second still
	// learns the outcome of its request when it resumes.
	return &storeClient{base: base, proc: proc, hc: &http.Client{Timeout: 10 * time.Second}}
}

// read returns the stored value; ok is false if the token was stale.
func (c *storeClient) read(token int64, id string) (v int64, ok bool, err error) {
	body, code, err := c.do(http.MethodGet, "/read", url.Values{"token": {itoa(token)}, "id": {id}})
	if err != nil || code == http.StatusConflict {
		return 0, false, err
	}
	v, err = strconv.ParseInt(body, 10, 64)
	return v, err == nil, err
}

// write stores v; ok is false if the token was stale.
func (c *storeClient) write(token, v int64, id string) (ok bool, err error) {
	_, code, err := c.do(http.MethodPost, "/write", url.Values{"token": {itoa(token)}, "value": {itoa(v)}, "id": {id}})
	return err == nil && code == http.StatusOK, err
}

func (c *storeClient) do(method, path string, q url.Values) (string, int, error) {
	q.Set("proc", strconv.Itoa(c.proc))
	req, err := http.NewRequest(method, c.base+path+"?"+q.Encode(), nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", 0, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusConflict {
		return "", resp.StatusCode, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return string(b), resp.StatusCode, nil
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
