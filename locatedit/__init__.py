"""LOCATEdit: CASA-graph-refined masks for text-guided image editing, and the tools to look inside it."""
