// tether-health computes the health of one Kubernetes object the way GitOps
// tools do, so the tests can assert it with the real libraries:
//
//	tether-health kstatus < object.json
//	    sigs.k8s.io/cli-utils kstatus `status.Compute` (Flux, kpt, cli-utils)
//	tether-health lua health.lua < object.json
//	    an Argo CD resource health check, run by gopher-lua (the Lua VM Argo
//	    CD embeds) with the object bound to the global `obj`, as Argo does
//
// Both print one JSON line: {"status": "...", "message": "..."}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tether-health:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: tether-health kstatus | lua <health.lua>  (object JSON on stdin)")
	}
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	// Decoded the way client-go decodes objects (integers as int64), as
	// kstatus expects them from a live API server.
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(raw); err != nil {
		return fmt.Errorf("parsing the object: %w", err)
	}
	object := u.Object
	var out result
	switch args[0] {
	case "kstatus":
		res, err := status.Compute(u)
		if err != nil {
			return fmt.Errorf("kstatus: %w", err)
		}
		out = result{Status: res.Status.String(), Message: res.Message}
	case "lua":
		if len(args) != 2 {
			return fmt.Errorf("usage: tether-health lua <health.lua>")
		}
		script, err := os.ReadFile(args[1])
		if err != nil {
			return fmt.Errorf("reading %s: %w", args[1], err)
		}
		out, err = runLua(string(script), object)
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown command %q", args[0])
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// runLua mirrors Argo CD's util/lua: a VM with only the base, table, string
// and math libraries (no io, no os), the object as the global `obj`, and a
// script that returns a table with `status` and `message`.
func runLua(script string, object map[string]interface{}) (result, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
	} {
		l.Push(l.NewFunction(lib.open))
		l.Push(lua.LString(lib.name))
		l.Call(1, 0)
	}
	l.SetGlobal("obj", toLua(l, object))
	if err := l.DoString(script); err != nil {
		return result{}, fmt.Errorf("lua: %w", err)
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return result{}, fmt.Errorf("lua: the script returned %s, not a table", l.Get(-1).Type())
	}
	var out result
	if s, ok := table.RawGetString("status").(lua.LString); ok {
		out.Status = string(s)
	}
	if m, ok := table.RawGetString("message").(lua.LString); ok {
		out.Message = string(m)
	}
	switch out.Status {
	case "Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown":
	default:
		return result{}, fmt.Errorf("lua: %q is not an Argo CD health status", out.Status)
	}
	return out, nil
}

// toLua converts decoded JSON the way Argo CD's luaValue conversion does:
// objects and arrays become tables (arrays 1-based), numbers, strings and
// booleans their Lua counterparts, null nil.
func toLua(l *lua.LState, v interface{}) lua.LValue {
	switch v := v.(type) {
	case map[string]interface{}:
		t := l.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(l, e))
		}
		return t
	case []interface{}:
		t := l.NewTable()
		for _, e := range v {
			t.Append(toLua(l, e))
		}
		return t
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case bool:
		return lua.LBool(v)
	default:
		return lua.LNil
	}
}
