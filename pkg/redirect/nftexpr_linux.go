package redirect

import (
	"net/netip"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Small builders for the nftables expressions the rules use. Each returns the
// expressions of one match or statement, as `nft` would print it; rules are
// the concatenation of a few of them. Register 1 is the only scratch register.

func rule(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// l4proto: `meta l4proto <p>`.
func l4proto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// port matches the TCP or UDP source (offset 0) or destination (offset 2)
// port: `tcp dport != 15008`.
func port(proto byte, offset uint32, op expr.CmpOp, p uint16) []expr.Any {
	return rule(l4proto(proto), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 2},
		&expr.Cmp{Op: op, Register: 1, Data: binaryutil.BigEndian.PutUint16(p)},
	})
}

func dport(proto byte, op expr.CmpOp, p uint16) []expr.Any { return port(proto, 2, op, p) }
func sport(proto byte, op expr.CmpOp, p uint16) []expr.Any { return port(proto, 0, op, p) }

// addrField names the source or the destination address of the IP header.
type addrField int

const (
	saddr addrField = iota
	daddr
)

// ipAddr: `ip saddr 169.254.7.127` or `ip6 daddr ::1`, by the family of a.
func ipAddr(f addrField, a netip.Addr) []expr.Any {
	proto, off := byte(unix.NFPROTO_IPV4), uint32(12) // iphdr.saddr
	if a.Is6() {
		proto, off = unix.NFPROTO_IPV6, 8 // ipv6hdr.saddr
	}
	if f == daddr {
		off += uint32(a.BitLen() / 8)
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(a.BitLen() / 8)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
	}
}

// ipAddrInSet: `ip daddr @set` (or ip6), v6 selecting the family.
func ipAddrInSet(f addrField, v6 bool, setName string, setID uint32) []expr.Any {
	proto, off, n := byte(unix.NFPROTO_IPV4), uint32(12), uint32(4)
	if v6 {
		proto, off, n = unix.NFPROTO_IPV6, 8, 16
	}
	if f == daddr {
		off += n
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Lookup{SourceRegister: 1, SetName: setName, SetID: setID},
	}
}

// markMasked: `meta mark & mask == val` (op Eq) or `!=` (op Neq).
func markMasked(op expr.CmpOp, val, mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(val)},
	}
}

// ctMarkMasked: `ct mark & mask == val`.
func ctMarkMasked(val, mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(mask), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(val)},
	}
}

// setCtMarkBits: `ct mark set ct mark & ^mask | val` (iptables
// `CONNMARK --set-xmark val/mask` with val inside mask).
func setCtMarkBits(val, mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^mask), Xor: binaryutil.NativeEndian.PutUint32(val)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}
}

// restoreMark: `meta mark set ct mark` (iptables `CONNMARK --restore-mark`
// with full masks).
func restoreMark() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}
}

// setCtZone: `ct zone set <z>`.
func setCtZone(z uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint16(z)},
		&expr.Ct{Key: expr.CtKeyZONE, Register: 1, SourceRegister: true},
	}
}

// ifname: `iifname "lo"` (in) or `oifname "lo"` (out).
func ifname(out bool, name string) []expr.Any {
	key := expr.MetaKeyIIFNAME
	if out {
		key = expr.MetaKeyOIFNAME
	}
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

// hasSocket matches packets sent by a local socket (iptables `-m owner
// --socket-exists`): loading skuid breaks the rule when there is none.
func hasSocket() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// redirectTo: `redirect to :<p>`.
func redirectTo(p uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(p)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

// snatTo: `snat ip to <a>` (or ip6).
func snatTo(a netip.Addr) []expr.Any {
	fam := uint32(unix.NFPROTO_IPV4)
	if a.Is6() {
		fam = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: a.AsSlice()},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: fam, RegAddrMin: 1},
	}
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }
