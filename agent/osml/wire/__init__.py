"""What goes over the wire: frames (codec, signing), topic names, the inbox that checks
untrusted frames, and the local trainer socket protocol. No sockets here."""
